"""Reporting: the papers' claims, leaderboard tables and plots, and tolerance checks."""
