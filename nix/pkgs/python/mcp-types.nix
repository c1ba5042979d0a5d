{
  lib,
  buildPythonPackage,
  fetchPypi,
  pydantic,
  typing-extensions,
}:

buildPythonPackage rec {
  pname = "mcp-types";
  version = "2.3.0";
  format = "wheel";

  src = fetchPypi {
    pname = "mcp_types";
    inherit version format;
    dist = "py3";
    python = "py3";
    hash = "sha256-lo79va7fqwatrkDTeKNDlfEJDFkh1L48nN4oOq922R0=";
  };

  dependencies = [
    pydantic
    typing-extensions
  ];

  # A wheel: its lower bounds (idna, pydantic, ...) can trail nixpkgs by a
  # minor release; the import check below is what must pass.
  dontCheckRuntimeDeps = true;
  pythonImportsCheck = [ "mcp_types" ];

  meta = {
    description = "Model Context Protocol wire types";
    homepage = "https://github.com/modelcontextprotocol/python-sdk";
    license = lib.licenses.mit;
  };
}
