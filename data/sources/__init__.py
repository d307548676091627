"""Where texts come from: each source returns documents grouped by category."""
