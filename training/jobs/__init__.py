"""The train task's child process, the service's side of it, and the files and lock they share."""
