"""The probe stage: heads trained (or zero-shot comparisons run) on cached features only.

Nothing here loads a backbone; features come from ``cache``'s feature stores.
"""
