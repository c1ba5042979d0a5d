# The hyperhive OCI image for the kubernetes runtime (docs/kubernetes.md): one image for
# the controller (`hyperhive serve`, deploy/kubernetes/deployment.yaml) and for every
# agent (`hyperhive-agent serve`, rendered by controller/drivers/kubernetes/render.py),
# with git and the claude CLI. Streamed, not stored: `nix build .#image` gives a script
# whose output is the image tarball (`./result | docker load`, `kind load image-archive`).
#
# Agents run as uid 1000 with a read-only root file system: everything they write is on
# their volume (/var/lib/hyperhive) or an emptyDir (/tmp, /run/hyperhive), so the image
# only needs those mount points, a passwd entry and CA certificates.
{
  pkgs,
  name ? "hyperhive",
  tag ? "latest",
  # what every agent of this image may use besides git and claude (e.g. [ pkgs.ripgrep ])
  extraPackages ? [ ],
}:

let
  uid = "1000";
  claude = "${pkgs.claude-code}/bin/claude";
  paths = [
    pkgs.hyperhive
    pkgs.git
    pkgs.claude-code
    pkgs.coreutils
    pkgs.bashInteractive
    pkgs.cacert
  ]
  ++ extraPackages;
in
pkgs.dockerTools.streamLayeredImage {
  inherit name tag;
  contents = paths;
  fakeRootCommands = ''
    mkdir -p etc tmp run/hyperhive var/lib/hyperhive etc/hyperhive
    chmod 1777 tmp
    chown ${uid}:${uid} run/hyperhive var/lib/hyperhive
    echo "root:x:0:0:root:/root:/bin/sh" > etc/passwd
    echo "hyperhive:x:${uid}:${uid}:hyperhive:/var/lib/hyperhive/home:/bin/sh" >> etc/passwd
    echo "root:x:0:" > etc/group
    echo "hyperhive:x:${uid}:" >> etc/group
  '';
  enableFakechroot = false;
  config = {
    User = "${uid}:${uid}";
    WorkingDir = "/var/lib/hyperhive";
    Cmd = [
      "hyperhive-agent"
      "serve"
    ];
    Env = [
      "PATH=${pkgs.lib.makeBinPath paths}"
      "HYPERHIVE_CLAUDE_BIN=${claude}"
      "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
      "NIX_SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
      "LANG=C.UTF-8"
      "PYTHONUNBUFFERED=1"
    ];
    Labels = {
      "org.opencontainers.image.title" = "hyperhive";
      "org.opencontainers.image.description" = "hyperhive controller and agent harness, with git and the claude CLI";
    };
  };
}
