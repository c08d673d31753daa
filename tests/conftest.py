import os

# Keep numeric libraries from oversubscribing the 2 CI cores when tests spawn processes.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["HF_HUB_OFFLINE"] = "1"  # the suite never touches the network: repository ids resolve from caches the tests build
