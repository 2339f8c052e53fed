"""Manual corrections, beside lesions/ as one capability:

    finding.py   find correction files by name in a derivatives folder, match them to images
    checking.py  check a file against its image (grid, values, "manual" sidecar); disc points
                 become a localizer image
    catalog.py   a run's corrections: found once, asked per image (in use, stamp, sidecars)
    kept.py      the raw network outputs kept per image, and what they were made from
    replay.py    redo an image from kept outputs or a corrected segmentation, no network

The run's corrections stage (`bids_app.run.stages.correct`) uses them; the engine does not
know this package.
"""
