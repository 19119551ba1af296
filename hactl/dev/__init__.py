"""`hactl dev init|up`: a local (or compose) cluster's PKI and configs, and a foreground supervisor."""
