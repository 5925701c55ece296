"""Paired-seed analysis of SLO-Guard studies, read back from MLflow."""
