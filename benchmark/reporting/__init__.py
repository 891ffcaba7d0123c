"""Reporting: the numbers the papers claim, read from `leaderboards/claims.toml` and validated so that
a leaderboard only ever sets a reproduced number beside a claim of the same protocol."""
