"""A stand-in for a CDN bucket (django-storages' S3Storage, GoogleCloudStorage...).

It writes collected static files to a directory outside the release, the way a remote
backend uploads them: nothing of them lives in the release, and Nginx does not serve them.
watcher treats every backend other than Django's stock local ones as remote, so this
subclass is enough to exercise what watcher does with a real bucket.
"""

from django.core.files.storage import FileSystemStorage


class BucketStorage(FileSystemStorage):
    """FileSystemStorage under another name: "the bucket" is MYSITE_STATIC_BUCKET_DIR."""
