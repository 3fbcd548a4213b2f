"""Networks only: plain nn.Modules built from small dataclasses, no I/O or config parsing."""
