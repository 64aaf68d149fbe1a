"""Optuna plumbing of the tune stage: the study, one trial, parallel workers."""
