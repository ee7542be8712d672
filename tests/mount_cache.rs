//! e2e: `asme mount` trusts names and attributes for a minute (issue 16: a `rm -rf` or a
//! second read of a tree costs no LOOKUP or GETATTR round trip), and stays correct because it
//! watches SOURCE: a change made there directly (a file rewritten, a mode changed, a name
//! made, removed or renamed, a folder made) is seen through the mount at once. Without the
//! watch (`-o timeout=60`: the kernel trusts for a minute and nothing tells it otherwise) the
//! same change stays unseen, which is what the watch is for. As root and as the user.

mod testenv;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use testenv::{TestDir, User, asme_as, ok, user1234};

const ASME: &str = env!("CARGO_BIN_EXE_asme");

/// How long a change made on SOURCE may take to show through a watched mount: the event's
/// trip through fanotify and the server's invalidation (milliseconds), far below the minute
/// the kernel would otherwise trust what it has.
const SEEN_WITHIN: Duration = Duration::from_secs(2);

/// SOURCE with a file and a folder, a mount point, unmounted when dropped.
struct Tree {
    dir: TestDir,
    user: &'static User,
}

impl Tree {
    fn new(label: &str) -> Tree {
        let user = user1234();
        let dir = TestDir::new(user, label);
        for sub in ["src", "src/sub", "mnt"] {
            fs::create_dir(dir.join(sub)).unwrap();
        }
        fs::write(dir.join("src/f"), "hello\n").unwrap();
        ok(Command::new("chown")
            .arg("-R")
            .arg("1234:1234")
            .arg(&dir.path));
        Tree { dir, user }
    }
    fn src(&self, rel: &str) -> PathBuf {
        self.dir.join("src").join(rel)
    }
    fn mnt(&self, rel: &str) -> PathBuf {
        self.dir.join("mnt").join(rel)
    }
    /// `asme mount OPTS src mnt`, as root or as the user.
    fn mount(&self, as_root: bool, opts: &[&str]) {
        let (src, mnt) = (self.src(""), self.mnt(""));
        let mut cmd = if as_root {
            Command::new(ASME)
        } else {
            asme_as(self.user, &self.dir.path, &[])
        };
        cmd.arg("mount").args(opts).arg(src).arg(mnt);
        ok(cmd);
    }
    /// What the mount shows, by names alone (a listing would refresh everything it lists):
    /// the file's size, mode and content, and whether two names exist, read as root.
    fn view(&self) -> String {
        let script = "stat -c '%s %a' f; cat f; for n in new sub2/made; do \
                      test -e $n && echo $n || echo no-$n; done";
        let out = Command::new("sh")
            .args(["-c", script])
            .current_dir(self.mnt(""))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.mnt("")).output();
    }
}

/// Changes SOURCE directly, as the user on the host would.
fn change_source(tree: &Tree) {
    fs::write(tree.src("f"), "hello, world\n").unwrap();
    fs::set_permissions(tree.src("f"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(tree.src("new"), "").unwrap();
    fs::create_dir(tree.src("sub/made")).unwrap();
    fs::rename(tree.src("sub"), tree.src("sub2")).unwrap();
    ok(Command::new("chown")
        .arg("-R")
        .arg("1234:1234")
        .arg(tree.src("")));
}

const BEFORE: &str = "6 644\nhello\nno-new\nno-sub2/made\n";
const CHANGED: &str = "13 600\nhello, world\nnew\nsub2/made\n";

/// The view once it equals `want`, or the last one seen when `within` ran out.
fn view_within(tree: &Tree, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let view = tree.view();
        if view == want || Instant::now() >= deadline {
            return view;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn changes_on_source_are_seen_at_once(as_root: bool) {
    let tree = Tree::new(if as_root { "cache-root" } else { "cache-user" });
    tree.mount(as_root, &[]);
    // The kernel learns the names, missing ones too, and attributes (and caches them for a
    // minute).
    assert_eq!(tree.view(), BEFORE);
    change_source(&tree);
    assert_eq!(view_within(&tree, CHANGED, SEEN_WITHIN), CHANGED);
    fs::remove_file(tree.src("new")).unwrap();
    let gone = CHANGED.replace("\nnew\n", "\nno-new\n");
    assert_eq!(view_within(&tree, &gone, SEEN_WITHIN), gone);
    // What the mount itself changes is the kernel's own doing, seen as ever.
    fs::write(tree.mnt("f"), "x\n").unwrap();
    assert_eq!(fs::metadata(tree.src("f")).unwrap().size(), 2);
    assert_eq!(fs::read_to_string(tree.mnt("f")).unwrap(), "x\n");
}

#[test]
fn a_root_mount_sees_changes_made_on_source_at_once() {
    changes_on_source_are_seen_at_once(true);
}

#[test]
fn a_user_mount_sees_changes_made_on_source_at_once() {
    changes_on_source_are_seen_at_once(false);
}

/// The same change through a mount that trusts for a minute without watching: still the old
/// view after the time the watched mount needed. This is what the watch prevents.
#[test]
fn without_the_watch_a_long_timeout_shows_the_old_view() {
    let tree = Tree::new("cache-nowatch");
    tree.mount(true, &["-o", "timeout=60"]);
    assert_eq!(tree.view(), BEFORE);
    change_source(&tree);
    let after = view_within(&tree, CHANGED, SEEN_WITHIN);
    assert_ne!(
        after, CHANGED,
        "the kernel did not cache: the test proves nothing"
    );
}
