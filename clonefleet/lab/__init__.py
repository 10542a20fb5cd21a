"""The local lab: qemu VMs that behave like bare servers with a netboot rescue system."""
