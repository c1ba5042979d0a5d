{
  lib,
  buildPythonPackage,
  fetchPypi,
}:

buildPythonPackage rec {
  pname = "lightkube-models";
  version = "1.37.0.8";
  format = "wheel";

  src = fetchPypi {
    pname = "lightkube_models";
    inherit version format;
    dist = "py3";
    python = "py3";
    hash = "sha256-/loWoqJm/RpaFHLW8e6HPbyF1pC8jWBRKx4BFXo9Z0U=";
  };

  pythonImportsCheck = [ "lightkube.models" ];

  meta = {
    description = "Models and resources of the Kubernetes API for lightkube";
    homepage = "https://github.com/gtsystem/lightkube-models";
    license = lib.licenses.mit;
  };
}
