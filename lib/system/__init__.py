"""What every stage stands on: atomic files and '-' streams, devices, threads, host memory."""
