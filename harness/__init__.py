"""ablate's machinery: training, optimizer, data, evaluation, launching, results."""
