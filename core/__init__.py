"""The LivePortrait method: pure per-frame functions and the Animator. No threads, no Qt, no files written."""
