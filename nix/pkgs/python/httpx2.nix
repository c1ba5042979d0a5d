{
  lib,
  buildPythonPackage,
  fetchPypi,
  anyio,
  httpcore2,
  idna,
  truststore,
  typing-extensions,
}:

buildPythonPackage rec {
  pname = "httpx2";
  version = "2.16.2";
  format = "wheel";

  src = fetchPypi {
    inherit pname version format;
    dist = "py3";
    python = "py3";
    hash = "sha256-8FwTqt5MRdvxyQYGR6EFjwrK1iOY+tludBJp7bM9RvU=";
  };

  dependencies = [
    anyio
    httpcore2
    idna
    truststore
    typing-extensions
  ];

  # A wheel: its lower bounds (idna, pydantic, ...) can trail nixpkgs by a
  # minor release; the import check below is what must pass.
  dontCheckRuntimeDeps = true;
  pythonImportsCheck = [ "httpx2" ];

  meta = {
    description = "HTTP client, the successor of httpx used by the MCP SDK 2.x";
    homepage = "https://github.com/pydantic/httpx2";
    license = lib.licenses.bsd3;
  };
}
