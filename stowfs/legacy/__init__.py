"""Format 2, read only for the upgrade: the segment store of stowfs 0.1.

A store whose `meta` says format 1 or 2 is opened with `legacy.store.Store` and every file
is copied into the current format by `stowfs.store.upgrade`. Nothing else imports this
package; it is kept whole (its planner, splitter and codec) so old stores stay readable.
"""
