"""Packages from the registries over plain HTTPS, unpacked in Python: no npm, node, apt or dpkg on the machine.

`npm` fetches a pinned npm package (registry JSON, then the tarball, checked against the registry's sha512
integrity and the pin); `debian` fetches Debian packages (the Packages index from the configured mirror, then the
.deb, checked against the SHA256 in the index; a .deb is an ar archive whose data.tar.* is unpacked here);
`http` is the one place that downloads. Used by the default models' build (nsfwjs, bangumi-data, openclipart).
"""
