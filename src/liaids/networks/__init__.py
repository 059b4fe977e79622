"""Networks: ``nn.Module`` definitions only (no losses, data handling or file I/O)."""
