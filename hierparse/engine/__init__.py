"""What the commands share: checkpoints, atomic files, torchrun set-up, resumable sampling, pictures."""
