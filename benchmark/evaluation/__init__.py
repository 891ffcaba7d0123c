"""Evaluation: the numbers the benchmark reports (re-ID ranking metrics, re-ranking, clustering).

Kept apart from training code so that labels only ever meet predictions here, and so that every
number can say which protocol variant produced it.
"""
