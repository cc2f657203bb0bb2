"""Concept-vector math on any (N, D) latent array (numpy or torch); imports nothing from conceptvae.

The estimators, the vector bank and the quality report arrive with their own issue.
"""
