"""herd: an application server herd on Twisted and Redis."""
