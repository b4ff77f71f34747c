"""The offline Fashion-MNIST demo: the whole SFD pipeline at toy scale on a CPU."""
