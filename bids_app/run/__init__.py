"""The run layer: selection, the participant run and its stages, the group level,
scheduling, resources, progress and SLURM scripts."""
