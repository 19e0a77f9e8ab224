"""posmesh's benchmark: `make bench` (`python -m bench`). See docs/bench.md."""
