"""One image's way through the participant run, one module per stage, in order:

    decide.py     decide: options, localizer, corrections hash, resume or skip (reads stamps)
    correct.py    corrections: check them before anything is touched, redo the image from them
    segment.py    segment: read, wait for memory, run the engine; what makes it partial
    write.py      write: label files and sidecars
    lesions.py    lesions: the lesion model on the images it applies to
    vertebrae.py  vertebral bodies: subregions, heights, grades and slips, table and figure
    image_qc.py   QC: measures, flags, previews (never costs the segmentation)
    stamp.py      stamp (last): remove stale outputs, record the outcome; a failure's record
    outcome.py    how an image's way ended, and `status_of`, the one place that decides its
                  status and reason; the status rows and table
    base.py       what stages share: `Segmented`, `StageOutput`, `AfterSegmentation`, `writing`

A stage is told what it needs (its constructor takes the output folder, model, memory gate;
each call takes the image) and hands back what it did; it never sees the run's state.

Adding a stage after segmentation (as vertebrae.py was): a class with `name`, `applies(job)`,
`run(image: Segmented, written) -> StageOutput` (outputs written, and a problem that makes
the image partial) and `worker_reads` (None, or the results it reads when it may run in a
stage worker process: it is then pickled there with only those), added to
`ParticipantRun.after` in `bids_app/run/participant.py` at its place in the order. The run
enters it (`base.run_stage`: in the image's thread or a worker), collects its outputs for
the stamp and its problem for the reason.
"""
