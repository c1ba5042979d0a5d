{
  lib,
  buildPythonPackage,
  fetchPypi,
  httpx2,
  h2,
  wsproto,
  lightkube-models,
  msgspec,
  pyyaml,
}:

# The Kubernetes client of the kubernetes runtime (controller/drivers/kubernetes/api.py):
# 1.x is the line built on httpx2, which nixpkgs does not have yet.
buildPythonPackage rec {
  pname = "lightkube";
  version = "1.0.1";
  format = "wheel";

  src = fetchPypi {
    inherit pname version format;
    dist = "py3";
    python = "py3";
    hash = "sha256-CUpq5qL6iVGJRQhlkVlk0DM20VYfyfxvSHhqB1Bzx4I=";
  };

  dependencies = [
    httpx2
    h2
    wsproto
    lightkube-models
    msgspec
    pyyaml
  ];

  dontCheckRuntimeDeps = true;
  pythonImportsCheck = [ "lightkube" ];

  meta = {
    description = "Lightweight Kubernetes client library";
    homepage = "https://github.com/gtsystem/lightkube";
    license = lib.licenses.mit;
  };
}
