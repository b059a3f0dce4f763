"""SFTP: protocol (paramiko's request layer), session pool, connecting, and the backend."""
