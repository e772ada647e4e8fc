"""``make report``: the leaderboard, mid- vs high-level scatter, task correlations and ranking."""
