"""Launching on clusters: the launch environment, the signal-relaying runner, hostfiles, preflight."""
