"""Integration tests: a real ``twistd accessgrid-transfer`` on 127.0.0.1, real clients."""
