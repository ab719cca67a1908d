"""Production traffic on demand: test-set replay (`pyrocast replay`) and shaped load tests (`pyrocast load`)."""
