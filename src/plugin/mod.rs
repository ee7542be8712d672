//! The asme volume driver: `docker volume create -d asme -o source=DIR`, a host folder that
//! containers see with its owner mapped, for as long as the engine uses it.
//!
//! A volume's mapping belongs to the engine, not to one `asme run`: dockerd calls the driver
//! at every container start (Mount) and stop (Unmount), keeps the managed plugin enabled
//! across its own restarts, and restarts it if it dies. So `docker start`, `docker restart`,
//! restart policies, compose and swarm services keep writing into the user's folder as the
//! user. The mapping follows the idmap strategy's rules (`idmap::IdMap::for_owner`): the
//! container uid and gid of the volume are stored as the owner, other ids as themselves,
//! and nothing as host root.
//!
//! - `protocol`: Docker's `docker.volumedriver/1.0` messages as serde types, the route of a
//!   request path, the `{"Err": ...}` answer. Pure.
//! - `options`: the `-o` options of a volume, checked and typed (`VolumeSpec`), and whose
//!   its files become. Pure.
//! - `state`: the volumes and their mount IDs on disk, written atomically, so a restarted
//!   plugin knows what is mapped; reference counting by mount ID.
//! - `http`: the endpoint on the plugin's unix socket (hyper), answering with a plain function.
//! - `mapping`: a mounted volume's mapping: idmapped, or asme's FUSE mapping where the
//!   filesystem refuses idmapped mounts or only the share's user may enter it.
//! - `driver`: what each request does, over `state` and `mapping`.
//! - `install`: `asme plugin install | uninstall | status`, and `serve` inside the plugin.
//!
//! The driver uses lower layers only (`sys`, `owner`, `cache`, `engine`, `idmap`, `fs`);
//! nothing below it uses it.

pub mod driver;
pub mod http;
pub mod install;
pub mod mapping;
pub mod options;
pub mod protocol;
pub mod state;
