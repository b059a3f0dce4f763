"""The repository: keys, config, master index, packer, locks, write ordering."""
