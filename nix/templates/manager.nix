# nixosConfigurations.manager: the manager container (`hm1nd`). Same harness as
# an agent, privileged API, and the host's <state>/manager/meta/ bind-mounted
# at /meta: the working clone it commits proposals in.
{ lib, ... }:
{
  hyperhive.agent = {
    name = lib.mkDefault "manager";
    flavor = "manager";
  };

  systemd.services.hyperhive-agent.unitConfig.RequiresMountsFor = [ "/meta" ];
}
