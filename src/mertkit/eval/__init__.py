"""MARBLE-style evaluation: metrics, probes on cached features, datasets, baselines."""
