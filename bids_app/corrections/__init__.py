"""Manual corrections: finding, matching and checking the files a person drew, and
replaying kept network outputs."""
