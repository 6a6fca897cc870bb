"""Hardware drivers behind small interfaces (lerobot-style): cameras/ and arms/."""
