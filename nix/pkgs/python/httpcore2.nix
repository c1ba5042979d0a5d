{
  lib,
  buildPythonPackage,
  fetchPypi,
  h11,
  truststore,
}:

buildPythonPackage rec {
  pname = "httpcore2";
  version = "2.16.2";
  format = "wheel";

  src = fetchPypi {
    inherit pname version format;
    dist = "py3";
    python = "py3";
    hash = "sha256-FgUa4qQvd2AHVD8y3pNJoxeyPSy7ThRWtLrA6IuHQZo=";
  };

  dependencies = [
    h11
    truststore
  ];

  # A wheel: its lower bounds (idna, pydantic, ...) can trail nixpkgs by a
  # minor release; the import check below is what must pass.
  dontCheckRuntimeDeps = true;
  pythonImportsCheck = [ "httpcore2" ];

  meta = {
    description = "Minimal low-level HTTP client (httpx2's transport)";
    homepage = "https://github.com/pydantic/httpx2";
    license = lib.licenses.bsd3;
  };
}
