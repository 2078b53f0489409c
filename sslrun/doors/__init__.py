"""The command-line doors' logic, importable from the package: each module has `main()` (the door)
and `entry()` (the console script of pyproject.toml, main() inside the one error boundary).
The files under jobs/ are thin launchers of these for a checkout run without installing."""
