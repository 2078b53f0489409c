"""sslrun: semi-supervised image classification as preemptible SLURM batch jobs."""

__version__ = "0.1.0"
