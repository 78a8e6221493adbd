# Convenience targets; each delegates to ./run, which bootstraps what it needs.
.PHONY: demo test bench soak
demo:
	./run demo
test:
	./run test
bench:
	./run bench
soak:
	./run soak
