"""Local, faithful fakes of the provider APIs clonefleet drives (Hetzner Cloud, Hetzner
Robot, OVH): stateful HTTP servers on loopback whose servers are lab VMs (or, for contract
tests, plain records). Users can run them too: `clonefleet lab api PROVIDER`."""
