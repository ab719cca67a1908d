"""Monitoring of the running system: live queries over the prediction store (`pyrocast.monitoring.live`)."""
