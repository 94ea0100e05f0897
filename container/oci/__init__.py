"""The OCI core: a runtime driven through runc's command line.

An engine (podman through conmon, containerd, or pycontainer's own front
end) writes a bundle, a directory holding ``config.json`` and the root it
names, and calls ``pycontainer-runtime`` to create, start, signal and
delete the container it describes (the OCI runtime spec, ``runtime.md``).
``config`` reads the bundle, refusing what it cannot honour in one line;
each part of the config is read by the module that carries it out.
"""
