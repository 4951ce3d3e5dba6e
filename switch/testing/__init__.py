"""Test tooling that runs against the real switch (fault-injecting TCP proxy); never imported by the switch."""
