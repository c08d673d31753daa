import os

# Keep numeric libraries from oversubscribing the 2 CI cores when tests spawn processes.
os.environ.setdefault("OMP_NUM_THREADS", "2")
