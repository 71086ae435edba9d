"""Jobs: the on-disk job store, the single GPU worker and its FIFO queue, and what each job kind runs."""
